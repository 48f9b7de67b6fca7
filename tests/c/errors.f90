! Error paths through the Fortran module: codes as in C, messages readable
! as Fortran strings, the route buffer too short for the path, and a
! round trip of an array through ckpt_checkpoint/ckpt_restart.
!
! usage: errors_f CONFIG. Exit 0 when every check passed; reports on
! stderr, nothing on stdout.
program errors_f
  use, intrinsic :: iso_c_binding, only: c_loc, c_sizeof, c_double
  use, intrinsic :: iso_fortran_env, only: error_unit
  use ckpt
  implicit none
  character(len=4096) :: config
  character(len=8) :: short
  character(len=CKPT_MAX_PATH) :: routed
  real(c_double), target :: a(10, 3)
  integer :: failures = 0, i
  logical :: flag

  call get_command_argument(1, config)

  call expect(ckpt_checkpoint('heat', 1), CKPT_ERR_NOT_INIT, 'checkpoint before init', '')
  call expect(ckpt_init('', 'bad/job'), CKPT_ERR_INVALID, 'init with a bad job', 'bad/job')
  call expect(ckpt_init('/nonexistent/x.toml', 'job'), CKPT_ERR_CONFIG, 'init with a missing file', &
       '/nonexistent/x.toml')
  call expect(ckpt_init(trim(config), 'fortran'), CKPT_SUCCESS, 'init', '')
  call expect(ckpt_init(trim(config), 'fortran'), CKPT_ERR_STATE, 'init twice', '')
  call expect(ckpt_mem_unprotect(42), CKPT_ERR_NOT_FOUND, 'unprotect unknown id', '42')
  call expect(ckpt_checkpoint('heat', -3), CKPT_ERR_INVALID, 'negative version', '')
  call expect(ckpt_restart_test('heat', -1), CKPT_ERR_NOT_FOUND, 'restart_test, no version', 'heat')
  call expect(ckpt_route_file('x.dat', routed), CKPT_ERR_STATE, 'route outside begin', '')

  ! A round trip of a 2-D array.
  a = reshape([(real(i, c_double) / 3.0_c_double, i = 1, size(a))], shape(a))
  call expect(ckpt_mem_protect(0, c_loc(a), size(a), int(c_sizeof(a(1, 1)))), CKPT_SUCCESS, &
       'protect', '')
  call expect(ckpt_checkpoint('heat', 2), CKPT_SUCCESS, 'checkpoint', '')
  call expect(ckpt_restart_test('heat', -1), 2, 'restart_test', '')
  call expect(ckpt_restart('heat', 5), CKPT_ERR_NOT_FOUND, 'restart of a missing version', 'heat')
  a = 0
  call expect(ckpt_restart('heat', 2), CKPT_SUCCESS, 'restart', '')
  if (any(a /= reshape([(real(i, c_double) / 3.0_c_double, i = 1, size(a))], shape(a)))) then
     write (error_unit, '(a)') 'FAIL: restart did not bring the array back'
     failures = failures + 1
  end if
  ! The same id, a different size: CKPT_ERR_SIZE.
  call expect(ckpt_mem_protect(0, c_loc(a), 10, int(c_sizeof(a(1, 1)))), CKPT_SUCCESS, &
       'protect smaller', '')
  call expect(ckpt_restart('heat', 2), CKPT_ERR_SIZE, 'restart with a size mismatch', '')

  ! A routed path longer than the Fortran variable.
  call expect(ckpt_checkpoint_begin('files', 1), CKPT_SUCCESS, 'checkpoint_begin', '')
  call expect(ckpt_route_file('x.dat', short), CKPT_ERR_TRUNCATED, 'route into 8 characters', &
       'x.dat')
  call expect(ckpt_route_file('x.dat', routed), CKPT_SUCCESS, 'route', '')
  if (index(routed, 'x.dat') == 0) then
     write (error_unit, '(a)') 'FAIL: routed path "' // trim(routed) // '" does not name x.dat'
     failures = failures + 1
  end if
  call expect(ckpt_checkpoint_end(.false.), CKPT_SUCCESS, 'checkpoint_end(.false.)', '')
  call expect(ckpt_restart_test('files', -1), CKPT_ERR_NOT_FOUND, 'abandoned is not offered', &
       'files')
  call expect(ckpt_need_checkpoint(flag), CKPT_SUCCESS, 'need_checkpoint', '')
  if (len(ckpt_strerror(CKPT_ERR_SIZE)) == 0) then
     write (error_unit, '(a)') 'FAIL: ckpt_strerror(CKPT_ERR_SIZE) is empty'
     failures = failures + 1
  end if
  call expect(ckpt_finalize(), CKPT_SUCCESS, 'finalize', '')
  call expect(ckpt_finalize(), CKPT_ERR_NOT_INIT, 'finalize twice', '')

  write (error_unit, '(i0,a)') failures, ' failures'
  if (failures > 0) error stop 1

contains

  subroutine expect(got, want, what, mention)
    integer, intent(in) :: got, want
    character(len=*), intent(in) :: what, mention
    character(len=:), allocatable :: msg
    msg = ckpt_last_error()
    if (got /= want) then
       write (error_unit, '(a,i0,a,i0,a)') 'FAIL: ' // what // ': got ', got, ', expected ', &
            want, '; last error: ' // msg
       failures = failures + 1
    else if (want < 0 .and. len(msg) == 0) then
       write (error_unit, '(a)') 'FAIL: ' // what // ': empty ckpt_last_error()'
       failures = failures + 1
    else if (want < 0 .and. len(mention) > 0 .and. index(msg, mention) == 0) then
       write (error_unit, '(a)') 'FAIL: ' // what // ': message "' // msg // '" does not name ' &
            // mention
       failures = failures + 1
    else
       write (error_unit, '(a,i0,a)') 'ok   ' // what // ' -> ', got, ' ' // msg
    end if
  end subroutine expect

end program errors_f
